"""Runs: what the image tools do, free of MCP — a typed request and a narrow context in, a typed result out.

`image_run` is generate/edit/inpaint (check → plan → run → save), `sweep/` and `refine/` build on it, and
`progress` is the one relay every run reports through. The tool layer (`tools/`) only adapts these to MCP.
"""
