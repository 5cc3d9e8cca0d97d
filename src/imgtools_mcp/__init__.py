"""imgtools-mcp: an MCP server of image tools backed by a local diffusers engine."""

__version__ = "0.1.0"
