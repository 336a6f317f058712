//! Root/kernel integration tests for DMS live in `tests/tests/`.
