"""The serving side: model loading, the generation engine, the chat UI and the HTTP API."""
