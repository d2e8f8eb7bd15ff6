"""Data for ranking: schemas, parquet datasets, converters and the streaming batch reader.

No model code lives here; `rankers` imports from `features`, never the other way round.
"""
