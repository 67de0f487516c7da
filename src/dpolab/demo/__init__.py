"""`dpolab demo`: a generated arithmetic task, its tokenizer and a tiny model, small enough for a laptop CPU."""
