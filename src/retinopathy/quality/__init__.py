"""Whether a fundus photograph can be graded: transparent measures, thresholds and a verdict.

``verdict.assess(image)`` measures a photograph (:mod:`.measures`: field, exposure,
focus, flare, each in a unit a person can check) and judges it against
``verdict.Thresholds``: gradable, or the reasons it is not, from the fixed vocabulary
``verdict.REASONS``. :mod:`.degrade` makes the camera faults that cause each reason,
for the demo and the tests. Where quality labels exist, :mod:`.learned` fits a small
model of EyeQ Reject on the same measures (scikit-learn) and keeps it as plain JSON.
Torch-free: numpy, Pillow, SciPy, scikit-learn. (Like every package
file here, this one holds only a docstring: dvc.yaml's code deps leave it out.)
"""
