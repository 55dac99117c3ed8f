"""Code the tests share (imported by test modules; no test module imports another)."""
