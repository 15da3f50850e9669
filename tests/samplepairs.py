"""A query and passages of every awkward length (empty, one word, past 256 tokens) for engine tests."""

QUERY = "vitamin d deficiency and the risk of multiple sclerosis"
PASSAGES = [
    "Football clubs spent record sums on transfers this summer.",
    "Vitamin D deficiency raises the risk of multiple sclerosis in young adults.",
    "",
    "A long passage about cooking: " + "tomatoes garlic olive oil basil pasta " * 60,
    "sclerosis",
    "The weather was mild and the harvest good, the village said, year after year. " * 5,
    "multiple sclerosis risk factors include smoking, obesity and low vitamin d",
]
