"""`python -m sglang.launch_server`: still supported by SGLang 0.5.23, with a warning."""

from __future__ import annotations

import sys
import warnings

if __name__ == "__main__":
    warnings.warn(
        "'python -m sglang.launch_server' is still supported, but 'sglang serve' is the "
        "recommended entrypoint.",
        UserWarning,
        stacklevel=1,
    )
    from .srt.server import serve

    serve(sys.argv[1:])
