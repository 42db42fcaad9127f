"""Turn fresh GPU hosts into verified AutoGLM-Phone-9B model servers, with pyinfra."""

__version__ = "0.1.0"
