"""The fleet: one sequence per channel, history, presence and resume, on one
node (in memory) or many (Redis)."""
