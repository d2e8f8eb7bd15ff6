"""Serving: a trained ranker exported to one TorchScript file (`export`, `rankers export`), and the
loader a bidding process imports (`load(FILE).score(rows)`)."""
