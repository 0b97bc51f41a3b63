"""The router: the backend contract, and the policy that picks the device or the cloud."""
