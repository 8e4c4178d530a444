"""clbench: does my fine-tuning method make the model forget?

A benchmark harness for continual learning on NLP task streams. Importing the package is cheap: torch and
transformers are imported only by the modules that need them.
"""

__version__ = "0.1.0"
