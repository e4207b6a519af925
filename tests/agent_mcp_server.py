"""A tiny MCP server over stdio for the agent tests: one tool, `shout`, that upper-cases."""

from mcp.server.fastmcp import FastMCP

server = FastMCP("shouter")


@server.tool()
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


if __name__ == "__main__":
    server.run("stdio")
