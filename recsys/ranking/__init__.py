"""Second stage: the ranker's training set (``dataset``), its features, the LightGBM LambdaRank ranker
and the optional diversity re-rank."""
