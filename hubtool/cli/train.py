"""Commands for training and evaluating experts (filled by issue 3)."""
