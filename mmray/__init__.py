"""mmray: a distributed dataflow engine on Ray for multi-modal cancer machine learning."""

__version__ = "0.1.0"
