"""Front ends for people watching the work: the MCP App viewer of tool results and the HTTP gallery's page."""

from .viewer import BOUND_TOOLS, VIEWER_URI, ViewerApp, hide_app_only_for_plain_clients, tool_meta, viewer_html

__all__ = ["BOUND_TOOLS", "VIEWER_URI", "ViewerApp", "hide_app_only_for_plain_clients", "tool_meta", "viewer_html"]
