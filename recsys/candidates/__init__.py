"""Candidate generators. All follow ``CandidateGenerator`` (see ``base``); ``registry`` lists them."""
