import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mvl.data import banana_log_density  # noqa: E402
from mvl.energies import QuadraticEnergy  # noqa: E402
from mvl.plotting import energy_log_density, plot_curves, plot_density, smooth  # noqa: E402


def test_smooth_is_a_moving_average_over_full_windows():
    out = smooth([0, 1, 2, 3, 4, 5], window=3)
    assert np.allclose(out, [1, 2, 3, 4])
    assert np.allclose(smooth([1.0, 2.0], window=5), [1.0, 2.0])


def test_plot_density_and_curves():
    fig, (a, b) = plt.subplots(1, 2)
    cs = plot_density(a, banana_log_density, data=torch.zeros(3, 2), title="t", n=40)
    assert cs is not None and a.get_xlabel() == "$x_1$" and a.get_title() == "t"
    plot_density(a, energy_log_density(QuadraticEnergy(torch.eye(2))), n=20)
    plot_curves(b, {"a": (list(range(100)), list(np.random.rand(100)))}, window=10)
    line = b.get_lines()[0]
    assert len(line.get_xdata()) == 91 and line.get_xdata()[0] == 4
    plt.close(fig)
