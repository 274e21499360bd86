import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mvl.data import banana_log_density  # noqa: E402
from mvl.energies import QuadraticEnergy  # noqa: E402
from mvl.plotting import (  # noqa: E402
    energy_log_density, image_grid, plot_curves, plot_density, plot_images, plot_velocity_field, smooth,
    velocity_field_grid,
)


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


def test_image_grid_places_every_image():
    images = torch.arange(5, dtype=torch.float32)[:, None].expand(5, 4) / 10  # five constant 2×2 images
    grid = image_grid(images, ncol=3, shape=(2, 2), pad=1, fill=-1.0)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1)
    for i in range(5):
        r, c = divmod(i, 3)
        block = grid[1 + 3 * r : 3 + 3 * r, 1 + 3 * c : 3 + 3 * c]
        assert np.allclose(block, i / 10)
    assert np.allclose(grid[4:6, 7:9], -1.0)  # the unused sixth slot keeps the fill value
    with pytest.raises(ValueError, match="ncol"):
        image_grid(images, ncol=0)


def test_plot_images_draws_on_the_axis():
    fig, ax = plt.subplots()
    plot_images(ax, torch.rand(6, 784), ncol=3, title="six")
    assert ax.get_title() == "six" and len(ax.images) == 1
    plt.close(fig)


def test_energy_log_density_follows_the_energy_dtype():
    energy = QuadraticEnergy(torch.eye(2, dtype=torch.float64))
    energy.register_parameter("dummy", torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)))
    out = energy_log_density(energy)(torch.ones(3, 2, dtype=torch.float32))
    assert out.dtype == torch.float32 and torch.allclose(out, torch.full((3,), -1.0))


def test_velocity_field_integrates_to_the_fisher_divergence():
    # p = N(m, s² I), q = N(0, I) in 2-D: v₀ = ∇log q − ∇log p = −x + (x − m)/s² and
    # D_F(p‖q) = ½ E_p‖v₀‖² = ½(‖m‖² + 2 (s − 1/s)²) (chapter 2, exercise ex-ch2-ou in 2-D)
    m, s = torch.tensor([1.0, 0.5], dtype=torch.float64), 0.8
    log_p = lambda x: -0.5 * ((x - m) ** 2).sum(-1) / s**2 + 7.0  # unnormalized on purpose  # noqa: E731
    log_q = lambda x: -0.5 * (x**2).sum(-1)  # noqa: E731
    field = velocity_field_grid(log_p, log_q, (-5.0, 5.0), (-5.0, 5.0), n=161)
    exact = 0.5 * (m.pow(2).sum().item() + 2 * (s - 1 / s) ** 2)
    assert abs(field.fisher / exact - 1) < 1e-3  # a factor 2 (the rate 2 D_F) or a sign error fails
    gy, gx = torch.meshgrid(field.ys, field.xs, indexing="ij")
    grid = torch.stack([gx, gy], -1)
    assert torch.allclose(field.velocity, -grid + (grid - m) / s**2, atol=1e-10)
    fig, ax = plt.subplots()
    field2, mesh = plot_velocity_field(ax, log_p, log_q, n=40, title="v")
    assert mesh is not None and ax.get_title() == "v" and field2.kinetic.shape == (40, 40)
    plt.close(fig)
    with pytest.raises(ValueError, match="n >= 8"):
        velocity_field_grid(log_p, log_q, n=3)
