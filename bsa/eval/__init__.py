"""`bsa eval`: sample a model k times per item, judge answers and reasoning, score as BSA does, compare."""
