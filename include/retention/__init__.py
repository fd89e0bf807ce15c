"""Retention enforcement: the policy catalogue, the rule calculus, the engine and the ledger."""
