"""Preference data: reading files and hub datasets, the formats people have, tokenisation."""
