#include "training/trainer.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/profile.hpp"
#include "ops/optim.hpp"

namespace rmt::training {

Trainer::Trainer(model::Model& model, const OptimizerSettings& settings, double clip_norm_,
                 double clip_value_, int64_t bptt_depth_)
    : clip_norm(clip_norm_), clip_value(clip_value_), bptt_depth(bptt_depth_), model_(model),
      settings_(settings) {
    const int64_t n = model_.layout().total();
    m_.assign(n, 0.0f);
    v_.assign(n, 0.0f);
}

void Trainer::begin_step(int64_t B, int64_t micro_batches) {
    if (micro_batches < 1 || micro_batches > B)
        throw std::invalid_argument("accumulate must be in [1, batch size " + std::to_string(B) +
                                    "], got " + std::to_string(micro_batches));
    RMT_PROFILE_SCOPE("optim.zero_grad");
    std::fill(model_.grads(), model_.grads() + model_.layout().total(), 0.0f);
}

StepStats Trainer::step(const int32_t* tokens, const int32_t* targets, const float* loss_mask,
                        int64_t B, int64_t L, double lr, int64_t micro_batches) {
    begin_step(B, micro_batches);
    // One normaliser for all micro-batches: the whole batch's count of selected tokens.
    int64_t selected = 0;
    {
    RMT_PROFILE_SCOPE("glue.count");
    for (int64_t i = 0; i < B * L; ++i)
        if (targets[i] != -100 && (!loss_mask || loss_mask[i] != 0.0f)) ++selected;
    }
    StepStats stats;
    stats.selected = selected;
    if (selected == 0) return stats;   // nothing to learn from this batch
    for (int64_t k = 0; k < micro_batches; ++k) {
        const int64_t b0 = B * k / micro_batches, b1 = B * (k + 1) / micro_batches;
        const auto r = model_.loss_and_grad(tokens + b0 * L, targets + b0 * L,
                                            loss_mask ? loss_mask + b0 * L : nullptr, b1 - b0, L,
                                            bptt_depth, nullptr, nullptr, nullptr, true, selected);
        stats.loss += r.loss;
    }
    finish_step(stats, lr);
    return stats;
}

StepStats Trainer::step_classify(const int32_t* tokens, const int32_t* labels, int64_t B, int64_t L,
                                 double lr, int64_t micro_batches) {
    begin_step(B, micro_batches);
    StepStats stats;
    stats.selected = B;
    for (int64_t k = 0; k < micro_batches; ++k) {
        const int64_t b0 = B * k / micro_batches, b1 = B * (k + 1) / micro_batches;
        const auto r = model_.classify_loss_and_grad(tokens + b0 * L, labels + b0, b1 - b0, L,
                                                     bptt_depth, nullptr, true, B);
        stats.loss += r.loss;
    }
    finish_step(stats, lr);
    return stats;
}

void Trainer::finish_step(StepStats& stats, double lr) {
    const int64_t n = model_.layout().total();
    float* grads = model_.grads();
    {
    RMT_PROFILE_SCOPE("optim.grad_norm");
    stats.grad_norm = ops::grad_norm<float>(grads, n);
    }
    stats.finite = std::isfinite(stats.loss) && std::isfinite(stats.grad_norm);
    if (!stats.finite) return;   // the caller decides; the parameters are untouched
    if (clip_norm > 0) {
        RMT_PROFILE_SCOPE("optim.clip_norm");
        ops::clip_grad_norm_given<float>(grads, n, clip_norm, stats.grad_norm);
    }
    if (clip_value > 0) {
        RMT_PROFILE_SCOPE("optim.clip_value");
        ops::clip_grad_value<float>(grads, n, clip_value);
    }
    ops::AdamHyper<float> h;
    h.lr = float(lr);
    h.beta1 = float(settings_.beta1);
    h.beta2 = float(settings_.beta2);
    h.eps = float(settings_.eps);
    h.weight_decay = float(settings_.weight_decay);
    h.decoupled_weight_decay = settings_.decoupled_weight_decay;
    ++steps_;
    auto update = [&] { ops::adam_step<float>(model_.params(), grads, m_.data(), v_.data(), n, steps_, h); };
    if (h.decoupled_weight_decay) {
        RMT_PROFILE_SCOPE("optim.adamw");
        update();
    } else {
        RMT_PROFILE_SCOPE("optim.adam");
        update();
    }
}

}  // namespace rmt::training
