"""Test helpers shipped with the package: dense float64 references and closed-form problems (:mod:`.reference`)."""
