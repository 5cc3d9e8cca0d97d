"""The refine run: its state (plan, best so far, history, revisions) and its loop (generate, critique, revise)."""
