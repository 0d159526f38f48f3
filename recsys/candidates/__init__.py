"""Candidate generators. All follow ``CandidateGenerator`` (see ``base``)."""
