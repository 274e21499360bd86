"""Figure helpers (mvl.plotting)."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from mvl.plotting import image_grid, plot_images


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
