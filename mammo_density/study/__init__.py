"""Study rules: one home for each rule about what a study is and when it may be assessed."""
