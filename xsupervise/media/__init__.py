"""What you see of a display: screenshots, video (the recorder process), and a live view
in the browser."""
