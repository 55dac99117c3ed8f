"""SAFE-QAQ support package: answer parsing, data preparation, sampling, evaluation, tiny model."""
