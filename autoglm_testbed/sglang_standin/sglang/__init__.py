"""Stand-in for SGLang 0.5.23 (autoglm_testbed.sglang_standin): CLI and HTTP API only."""

__version__ = "0.5.23"
