//! Unit tests of the fleet's reads and operations against the embedded local catalog in a temp dir.
