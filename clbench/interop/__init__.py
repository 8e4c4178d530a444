"""Bridges to other continual-learning libraries; each module imports its library only when called."""
