"""A specialist's decision for one request: the task gate, validation, and the accept-or-fall-back rule.

One decision function (`decision.py`) is used by the router online and by calibration offline, so the
threshold calibrated on held-out calls is exactly the rule applied to live traffic. No HTTP, no torch.
"""
