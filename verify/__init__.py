"""Proofs and trace checks. Imports models/ and traces/, never runtime/."""
