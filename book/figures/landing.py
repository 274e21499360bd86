"""The two figures of the landing page (``book/index.md``): the course's idea at a glance, and the
learning path. Regenerate with ``python book/figures/landing.py`` (about 20 s on one CPU core).

Figure 1 is a real computation with the library: banana data p, a Gaussian model q fitted to p's first two
moments, the Wasserstein velocity v₀ = −∇log(p/q) of the Langevin flow that carries p toward q (chapter 2),
particles moved by that flow, and the KL along the flow with the tangent whose slope is predicted by the
score-matching objective, −E_p‖v₀‖² = −2 D_F(p‖q) (chapter 3): MVL estimates that initial squared speed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from mvl.data import banana, banana_log_density  # noqa: E402
from mvl.divergences import kl_grid  # noqa: E402
from mvl.energies import QuadraticEnergy, energy_and_grad  # noqa: E402
from mvl.objectives import fisher_divergence  # noqa: E402
from mvl.samplers import langevin_step  # noqa: E402

HERE = Path(__file__).resolve().parent


def idea_figure(path: Path, n: int = 200_000, eps: float = 0.005, steps: int = 60, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    x = banana(n, seed=seed, dtype=torch.float64)
    mean, cov = x.mean(0), torch.cov(x.T)
    model = QuadraticEnergy(torch.linalg.inv(cov), mean)  # a poor model: the Gaussian with p's moments

    def log_q(v):
        return -model(v)

    d_f = fisher_divergence(banana_log_density, model, x).mean().item()
    times, kls, snapshots = [], [], {}
    particles = x.clone()
    for k in range(steps + 1):
        if k % 5 == 0:
            times.append(k * eps)
            # a narrow fixed bandwidth on a fine grid: the KDE's smoothing otherwise flattens the KL curve
            kls.append(float(kl_grid(particles, log_q, xlim=(-9.0, 9.0), ylim=(-5.0, 15.0), n=500, bandwidth=0.1)))
        if k in (0, 20, 60):
            snapshots[k] = particles[:1500].clone()
        if k < steps:
            particles, _ = langevin_step(model, particles, eps)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    ax = axes[0]
    g = torch.linspace(-5, 5, 17, dtype=torch.float64)
    gx, gy = torch.meshgrid(g, torch.linspace(-3, 4, 13, dtype=torch.float64), indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    _, grad_e = energy_and_grad(model, grid, create_graph=False)
    _, grad_neg_log_p = energy_and_grad(lambda v: -banana_log_density(v), grid, create_graph=False)
    v0 = (grad_neg_log_p - grad_e).detach()  # v0 = -grad log p + grad log q = -grad log(p/q)
    weight = banana_log_density(grid).exp().detach()
    keep = weight > 1e-3 * weight.max()
    ax.quiver(grid[keep, 0], grid[keep, 1], v0[keep, 0], v0[keep, 1], color="0.35", angles="xy", width=0.003,
              label=r"velocity $v_0=-\nabla\log(p/q)$")
    colors = {0: "tab:blue", 20: "tab:orange", 60: "tab:red"}
    for k, pts in snapshots.items():
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.35, color=colors[k], label=f"particles at $t={k * eps:.2f}$")
    ax.set(xlim=(-5.5, 5.5), ylim=(-3.5, 5), xlabel="$x_1$", ylabel="$x_2$",
           title="data $p$ flowing toward the model $q$ (Langevin)")
    ax.legend(loc="upper center", fontsize=8, markerscale=4, framealpha=0.9)

    ax = axes[1]
    t = torch.tensor(times)
    ax.plot(t, kls, "o-", color="tab:blue", label=r"$\mathrm{KL}(p_t\|q)$ along the flow (grid estimate)")
    tt = torch.linspace(0, times[3], 10)
    ax.plot(tt, kls[0] - 2 * d_f * tt, "--", color="tab:red",
            label=rf"predicted initial slope $-\mathbb{{E}}_p\|v_0\|^2=-2D_F(p\|q)={-2 * d_f:.2f}$")
    ax.set(xlabel="flow time $t$", ylabel="KL divergence (nats)",
           title="score matching = the initial squared speed")
    ax.legend(fontsize=8)
    fig.suptitle("Minimum velocity learning: make the flow from the data to the model start as slowly as possible",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"fisher_divergence": d_f, "kl0": kls[0], "initial_slope_numeric": (kls[1] - kls[0]) / (times[1] - times[0])}


CHAPTERS = {
    1: ("Score matching", (0.0, 3.0)),
    2: ("Wasserstein\ngradient flows", (1.6, 3.0)),
    3: ("Minimum velocity\nlearning", (3.2, 3.0)),
    4: ("Infinite variance\nand its fix", (4.8, 3.8)),
    5: ("Beyond Langevin:\nSVGD, KSD, SPOS", (4.8, 2.2)),
    6: ("Manifolds:\nRiemannian MVL", (6.4, 3.0)),
    7: ("VAEs with\na VampPrior", (0.0, 1.0)),
    8: ("Energy-based\npriors", (1.6, 1.0)),
    9: ("Implicit\nhyperspherical VAEs", (6.4, 1.0)),
    10: ("Hyperspherical\nWAEs and FID", (8.0, 1.0)),
}
EDGES = [(1, 2), (2, 3), (3, 4), (3, 5), (3, 6), (7, 8), (4, 8), (6, 9), (8, 9), (9, 10)]
WRITTEN = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}


def path_figure(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(11, 3.6))
    w, h = 1.3, 0.8
    for k, (name, (x, y)) in CHAPTERS.items():
        done = k in WRITTEN
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", linewidth=1.2,
                                    facecolor="#dbe9f6" if done else "white", edgecolor="#2b5c8a" if done else "0.6",
                                    linestyle="-" if done else "--"))
        ax.text(x + w / 2, y + h / 2, f"{k}. {name}", ha="center", va="center", fontsize=8.5,
                color="black" if done else "0.45")
    for a, b in EDGES:
        (xa, ya), (xb, yb) = CHAPTERS[a][1], CHAPTERS[b][1]
        start = (xa + w + 0.05, ya + h / 2) if xb > xa else (xa + w / 2, ya - 0.05)
        end = (xb - 0.05, yb + h / 2) if xb > xa else (xb + w / 2, yb + h + 0.05)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="0.3", linewidth=1))
    ax.text(0.0, 4.3, "Learning unnormalized models", fontsize=10, weight="bold", color="#2b5c8a")
    ax.text(0.0, 0.45, "Auto-encoders with flexible priors", fontsize=10, weight="bold", color="#2b5c8a")
    if len(WRITTEN) < len(CHAPTERS):
        ax.text(9.4, 4.3, "solid: written\ndashed: coming", fontsize=8, ha="right", va="top", color="0.4")
    ax.set(xlim=(-0.2, 9.5), ylim=(0.3, 4.95))
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    info = idea_figure(HERE / "landing_idea.png")
    path_figure(HERE / "learning_path.png")
    print({k: round(v, 3) for k, v in info.items()})
