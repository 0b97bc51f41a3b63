"""The cloud overflow service (vLLM launcher and gateway) and the desktop's client for it."""
