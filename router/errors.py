"""One error tree for all of tandem: every error a caller can act on is a `TandemError`.

`str(error)` is one or two sentences for a person (what happened, what to do). Errors from
MLX, httpx, vLLM and the standard library are translated into these where they enter
(`raise ... from exc`); the chat and the commands catch the classes, never parse the text.
Classes that used to be plain `ValueError`s or `RuntimeError`s keep that base too, so an
`except ValueError` written against them still works.

The tree (where each class is defined)::

    TandemError                          router.errors
    ├── BackendError                     router.errors: a backend failed; `.backend` names it
    │   ├── Unavailable                  cannot be reached, crashed, connection lost, not loaded
    │   │   └── BothFailed               router.hybrid: one side failed, then the other
    │   ├── Unauthorized                 the key was refused
    │   ├── Overloaded                   busy; try again after `.retry_after` seconds
    │   ├── ContextTooLong               prompt + max_tokens exceed the context window
    │   ├── PrivacyRefused               router.privacy: the cloud client refused to send it
    │   └── ModelError                   the model failed (out of memory, bad weights, adapter)
    │       ├── ModelTooLarge            local.models: would not fit this machine's memory
    │       └── HubUnreachable           local.models: the Hugging Face hub cannot be reached
    ├── InvalidRequest (ValueError)      router.errors: a request the contract refuses
    ├── ProtocolViolation (AssertionError)  router.errors: a backend broke the stream contract
    ├── PrivacyConfigError (ValueError)  router.privacy: a privacy pattern that does not compile
    ├── CaseError (ValueError)           router.privacy_eval: a labelled case that cannot be read
    ├── CalibrationError (ValueError)    router.calibrate: labelled data that cannot calibrate
    ├── BadRequest (ValueError)          router.serve: a body `tandem serve` cannot answer
    ├── FieldError (ValueError)          router.serve_checks: one field of a request body
    ├── ToolFieldError (ValueError)      router.serve_tools: a tools or reasoning field
    ├── MessagesFieldError (ValueError)  router.serve_anthropic_request: a /v1/messages field
    ├── FinetuneError                    local.finetune.errors
    │   ├── DataError                    training data that cannot be used (file, line, why)
    │   ├── AdapterNotFound (LookupError)
    │   ├── BaseMismatch                 an adapter trained on another base model
    │   ├── ExportRefused
    │   └── ResumeError
    ├── QuantizeError                    local.quantize
    │   └── QualityLossTooHigh           the perplexity check refused the quantized model
    ├── LaunchError (RuntimeError)       cloud.launch: vLLM cannot be started as configured
    ├── SpeculativeError (ValueError)    cloud.speculative: a speculative-decoding config
    ├── TrustError (ValueError)          cloud.trust: a CA file that cannot be used
    ├── AdapterError (ValueError)        cloud.gateway.adapters: an adapter upload refused
    ├── KeyStoreError (ValueError)       cloud.gateway.keys: the API key file
    ├── BodyError                        cloud.gateway.body: a request body the gateway refuses
    ├── ConfigError                      tui.config: config.toml cannot be read or saved
    ├── McpConfigError (ValueError)      tui.mcp.config: an [mcp.servers.NAME] table
    ├── McpError                         tui.mcp.hub: a tool call gave no result
    │   ├── ToolUnknown                  no running server offers that tool
    │   ├── ToolTimedOut                 no result within the server's timeout
    │   ├── ToolFailed                   the server or the tool reported an error
    │   └── ServerGone                   the server stopped (exited, connection closed)
    ├── ComposeError                     tui.compose: the config describes no backend
    │   └── DefaultNotPulled             no model configured and the default is not pulled
    └── NoKeyring                        tui.secrets: no OS keyring to keep the API key in

`tests/test_errors.py` checks that every exception class in the project hangs from this root.
Nothing here imports anything: `local/` and `cloud/` reach it through `router.protocol`.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ContextTooLong",
    "InvalidRequest",
    "ModelError",
    "Overloaded",
    "ProtocolViolation",
    "TandemError",
    "Unauthorized",
    "Unavailable",
]


class TandemError(Exception):
    """The root of every error tandem raises on purpose. The message is for a person."""


class InvalidRequest(TandemError, ValueError):
    """A request (message, sampling, pin) that the contract refuses when it is made."""


class ProtocolViolation(TandemError, AssertionError):
    """A backend broke the stream contract (a bug in that backend, not a user error)."""


class BackendError(TandemError):
    """A failure the caller can act on. The message is one sentence for a person."""

    def __init__(self, message: str, *, backend: str = "") -> None:
        super().__init__(message)
        self.backend = backend


class Unavailable(BackendError):
    """Cannot be reached, crashed, lost the connection, or is not loaded."""


class Unauthorized(BackendError):
    """The API key was refused."""


class Overloaded(BackendError):
    """Too busy to take the request now."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, backend: str = ""
    ) -> None:
        super().__init__(message, backend=backend)
        self.retry_after = retry_after


class ContextTooLong(BackendError):
    """The prompt plus the requested tokens do not fit the context window."""

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        context_window: int | None = None,
        backend: str = "",
    ) -> None:
        super().__init__(message, backend=backend)
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window


class ModelError(BackendError):
    """The model failed: out of memory, corrupt weights, an adapter that does not fit."""
