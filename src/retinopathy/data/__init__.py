"""The data: course-layout label files, image decoding, the Dataset, the prepared index, the demo."""
