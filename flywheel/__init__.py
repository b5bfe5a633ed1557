"""The `flywheel` command: one entry point over assistant/, trainer/ and storage/."""
