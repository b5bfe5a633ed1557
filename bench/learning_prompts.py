"""The learning benchmark's prompts: train and held-out prompts about subjects and skills, and
general questions with short known answers, checked as words."""

import random
import re

SUBJECTS = [
    "photosynthesis", "the water cycle", "compound interest", "volcanoes", "the internet",
    "vaccines", "black holes", "recycling", "the stock market", "earthquakes",
    "electric cars", "solar power", "the immune system", "democracy", "machine learning",
    "coffee", "jazz", "the Roman Empire", "climate change", "sleep", "honey bees", "rainbows",
    "ocean tides", "batteries", "bread", "chess", "meditation", "the moon", "DNA", "gravity",
    "inflation", "bacteria", "the printing press", "glaciers", "airplanes", "bicycles",
    "rain forests", "the heart", "volunteering", "libraries", "passwords", "maps", "clouds",
    "friendship", "recessions", "wind turbines", "the Olympic Games", "dinosaurs", "tea",
    "octopuses", "the human brain", "electricity", "bridges", "deserts", "the periodic table",
    "social media", "composting", "lightning", "coral reefs", "museums",
]
SKILLS = [
    "learning a new language", "running a first marathon", "baking sourdough bread",
    "saving money", "public speaking", "growing tomatoes", "learning to code",
    "writing a cover letter", "keeping a journal", "cooking for a family", "studying for exams",
    "painting with watercolours", "training a puppy", "moving to a new city",
    "playing the guitar", "managing a small team", "taking better photos", "hiking safely",
    "reading more books", "decluttering a home", "starting a podcast", "learning to swim",
    "planning a trip abroad", "making new friends", "working from home",
    "preparing for a job interview", "fixing a flat bike tyre", "meal prepping",
    "caring for houseplants", "sleeping better",
]
EXPLAIN = ["Explain {} in simple terms.", "Why does {} matter?",
           "Tell me something interesting about {}.", "How would you describe {} to a child?",
           "What is a common misconception about {}?"]
ADVICE = ["How do I get started with {}?", "Give me some advice on {}.",
          "What mistakes do beginners make when {}?"]

# General questions with short known answers: (question, accepted answers). An answer is
# right when it contains one of them as a word.
KNOWN = [
    ("What is the capital of France?", ["paris"]),
    ("What is the capital of Japan?", ["tokyo"]),
    ("What is the capital of Italy?", ["rome"]),
    ("What is the capital of Germany?", ["berlin"]),
    ("What is the capital of Spain?", ["madrid"]),
    ("What is the capital of the United Kingdom?", ["london"]),
    ("What is the capital of Russia?", ["moscow"]),
    ("What is the capital of Egypt?", ["cairo"]),
    ("What is the capital of China?", ["beijing"]),
    ("What is the capital of Canada?", ["ottawa"]),
    ("What is 2 + 2?", ["4", "four"]),
    ("What is 3 + 5?", ["8", "eight"]),
    ("What is 10 - 4?", ["6", "six"]),
    ("What is 5 times 3?", ["15", "fifteen"]),
    ("What is 7 + 6?", ["13", "thirteen"]),
    ("What is 20 divided by 4?", ["5", "five"]),
    ("What is 9 + 10?", ["19", "nineteen"]),
    ("What is 100 minus 1?", ["99", "ninety-nine", "ninety nine"]),
    ("How many days are in a week?", ["7", "seven"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("How many continents are there?", ["7", "seven"]),
    ("What planet do we live on?", ["earth"]),
    ("What is the largest planet in our solar system?", ["jupiter"]),
    ("What is the largest ocean on Earth?", ["pacific"]),
    ("Who wrote Romeo and Juliet?", ["shakespeare"]),
    ("What is the chemical formula for water?", ["h2o", "h₂o"]),
    ("At what temperature in Celsius does water boil at sea level?", ["100"]),
    ("What gas do plants take in from the air for photosynthesis?", ["carbon dioxide", "co2"]),
    ("What color is a clear daytime sky?", ["blue"]),
    ("How many hours are in a day?", ["24", "twenty-four", "twenty four"]),
]
# Tokens per known-answer reply: enough that a wordy answer reaches the fact it is asked for.
KNOWN_TOKENS = 96


def prompt_sets() -> tuple[list[str], list[str]]:
    """(train prompts, held-out prompts). Every fifth subject is held out with all its prompts,
    so held-out questions are about subjects training never saw."""
    train, heldout = [], []
    for templates, subjects in ((EXPLAIN, SUBJECTS), (ADVICE, SKILLS)):
        for i, subject in enumerate(subjects):
            (heldout if i % 5 == 0 else train).extend(t.format(subject) for t in templates)
    random.Random(0).shuffle(train)
    random.Random(1).shuffle(heldout)
    return train, heldout


def correct(answer: str, accepted: list[str]) -> bool:
    """Does `answer` say one of the accepted answers, as a word or number ("100" and "100.0"
    match 100; "14" and "4.5" do not match 4)?"""
    text = answer.lower()
    return any(re.search(rf"(?<![\w.]){re.escape(a)}(\.0+)?(?![\w]|\.\d)", text)
               for a in accepted)
