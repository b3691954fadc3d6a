// One optimisation step in C++: forward and backward over micro-batches, gradient clipping and an
// Adam/AdamW update on the model's flat buffers. The Python Trainer feeds data, schedules the
// learning rate, evaluates and writes checkpoints; everything per step happens here.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.hpp"

namespace rmt::training {

struct OptimizerSettings {
    bool decoupled_weight_decay = true;   // true: AdamW, false: Adam (L2 in the gradient)
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

struct StepStats {
    double loss = 0;          // token-weighted mean over the whole batch
    double grad_norm = 0;     // global L2 norm before clipping
    int64_t selected = 0;     // tokens in the loss
    bool finite = true;       // false: the loss or a gradient was NaN/inf and nothing was updated
};

class Trainer {
public:
    // clip_norm, clip_value <= 0: no clipping. bptt_depth < 0: full.
    Trainer(model::Model& model, const OptimizerSettings& settings, double clip_norm,
            double clip_value, int64_t bptt_depth);

    // tokens, targets, loss_mask (B, L); the batch is split into `micro_batches` row chunks run one
    // after the other (gradient accumulation), whose gradients add up to the whole batch's.
    StepStats step(const int32_t* tokens, const int32_t* targets, const float* loss_mask, int64_t B,
                   int64_t L, double lr, int64_t micro_batches);

    // rmt_encoder: the same step for classification, labels (B,).
    StepStats step_classify(const int32_t* tokens, const int32_t* labels, int64_t B, int64_t L,
                            double lr, int64_t micro_batches);

    int64_t steps_taken() const { return steps_; }
    void set_steps_taken(int64_t steps) { steps_ = steps; }
    Buffer& exp_avg() { return m_; }
    Buffer& exp_avg_sq() { return v_; }
    model::Model& model() { return model_; }
    const OptimizerSettings& settings() const { return settings_; }
    double clip_norm = 0, clip_value = 0;
    int64_t bptt_depth = -1;

private:
    // Checks the accumulation count and zeroes the gradients.
    void begin_step(int64_t B, int64_t micro_batches);
    // Norm, clipping and the Adam update on the accumulated gradients.
    void finish_step(StepStats& stats, double lr);

    model::Model& model_;
    OptimizerSettings settings_;
    Buffer m_, v_;
    int64_t steps_ = 0;
};

}  // namespace rmt::training
