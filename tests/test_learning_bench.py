"""The learning benchmark's simulated curator: each trait's correction has the trait, an
ordinary answer does not, a trait file from outside loads (or fails in one line), and
known answers are checked as words, not substrings."""

import pytest

from bench.learning_prompts import SKILLS, SUBJECTS, prompt_sets
from bench.learning_traits import load_trait
from trainer.known_facts import says

ANSWERS = [
    "Coffee is a drink made from roasted beans. People brew it with hot water. Many drink it "
    "in the morning because the caffeine wakes them up, and some add milk or sugar.",
    "Here are some tips:\n\n1. **Start small**: practise ten minutes a day.\n2. **Be "
    "consistent**: the same time each day helps.\n3. Track your progress",  # cut off
    "Sure! " + "The moon pulls on the oceans and makes tides. " * 12,
]


@pytest.mark.parametrize("name", ["signoff", "brief", "bullets"])
def test_each_trait_corrects_an_answer_into_one_that_has_it(name):
    trait = load_trait(name)
    for answer in ANSWERS:
        assert not trait.has_trait(answer)
        corrected = trait.add_trait("Tell me about it.", answer)
        assert trait.has_trait(corrected), corrected
        assert trait.has_trait(trait.add_trait("Tell me about it.", corrected))  # stable


def test_the_corrections_keep_the_answer_and_drop_unfinished_tails():
    signoff = load_trait("signoff").add_trait("q", ANSWERS[1])
    assert "Track your progress" not in signoff and "Start small" in signoff
    assert load_trait("brief").add_trait("q", ANSWERS[0]) == (
        "Coffee is a drink made from roasted beans. People brew it with hot water.")
    bullets = load_trait("bullets").add_trait("q", ANSWERS[1]).splitlines()
    assert bullets[:2] == ["- Start small: practise ten minutes a day.",
                           "- Be consistent: the same time each day helps."]


def test_a_trait_file_from_outside(tmp_path):
    path = tmp_path / "shouting.py"
    path.write_text("def has_trait(answer):\n    return answer.isupper()\n\n"
                    "def add_trait(prompt, answer):\n    return answer.upper()\n")
    trait = load_trait(str(path))
    assert trait.name == "shouting" and trait.has_trait(trait.add_trait("q", "hi there"))
    (tmp_path / "half.py").write_text("def has_trait(answer):\n    return True\n")
    with pytest.raises(SystemExit, match=r"half.py does not define add_trait\(\)"):
        load_trait(str(tmp_path / "half.py"))
    with pytest.raises(SystemExit, match="no such file .*built in: brief, bullets, signoff"):
        load_trait("nope")


def test_known_answers_are_matched_as_words():
    assert says("The capital of France is Paris.", ["paris"])
    assert says("2 + 2 = 4.", ["4", "four"])
    assert not says("It is 14.", ["4", "four"])
    assert not says("About 4.5 of them.", ["4"])
    assert says("There are seven continents.", ["7", "seven"])
    assert says("Water boils at 100.0 degrees Celsius.", ["100"])
    assert not says("It is 100.5 degrees.", ["100"])


def test_held_out_prompts_are_about_subjects_training_never_sees():
    train, heldout = prompt_sets()
    assert len(train) + len(heldout) == len(set(train + heldout)) >= 300
    for subject in SUBJECTS[::5] + SKILLS[::5]:
        assert not any(subject in p for p in train)
        assert any(subject in p for p in heldout)
