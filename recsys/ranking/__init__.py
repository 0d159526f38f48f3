"""Second stage: the LightGBM LambdaRank ranker and the optional diversity re-rank."""
