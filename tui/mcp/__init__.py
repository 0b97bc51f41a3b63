"""The chat's tools: MCP servers the user declares in config.toml (`config`), run beside the
chat (`hub`), each call asked for first (`permissions`)."""
