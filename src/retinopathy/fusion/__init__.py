"""Grading with both eyes: pair a patient's two photographs, and a small blend over both eyes' features."""
