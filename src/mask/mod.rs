//! Secret masking, usable without SSH: built-in detectors with stable names,
//! policy regexes, an aho-corasick prefilter and a streaming masker with a
//! carry-over window so secrets split across reads are still caught.
