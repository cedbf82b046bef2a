"""The public DR sets that are not the training data, read as their users unpack them.

One module per format (``contract.EXTERNAL_FORMATS``), each a ``read(root) -> Listing``
(:mod:`~retinopathy.data.external.listing`), found by its name in
:mod:`~retinopathy.data.external.formats`; :mod:`~retinopathy.data.external.importer`
writes a listing as a test-only folder in the course layout (`retinopathy import-external`).
"""
