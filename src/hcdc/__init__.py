"""hcdc: Hyperparameter Calibrated Dataset Condensation (Ding et al., ICLR 2024).

Condenses a training set into a tiny synthetic proxy (training part plus a learned validation
part) on which hyperparameter configurations rank as they rank on the full data.
"""

__version__ = "0.1.0"
