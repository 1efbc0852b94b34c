"""Pure data transforms over batches of rows: align formats, render chat templates, tokenize, pad."""

IGNORE_INDEX = -100  # label value that the loss skips (prompt tokens, padding)
