"""CompLeak: membership-inference attacks on compressed models (NR, SR, MR; arXiv 2507.16872) plus RMIA and LiRA.

Pure NumPy / scikit-learn; usable on plain arrays. See docs/attacks.md.
"""
